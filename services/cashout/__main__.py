from services.common.service import run_service
from services.common.stages import cashout

if __name__ == "__main__":
    run_service("cashout", cashout)
