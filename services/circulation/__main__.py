from services.common.service import run_service
from services.common.stages import circulation

if __name__ == "__main__":
    run_service("circulation", circulation)
