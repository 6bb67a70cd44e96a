from services.common.service import run_service
from services.withdrawal.stage import build

if __name__ == "__main__":
    run_service("withdrawal", build)
