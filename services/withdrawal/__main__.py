from services.common.service import run_service
from services.common.stages import withdrawal

if __name__ == "__main__":
    run_service("withdrawal", withdrawal)
