from services.common.service import run_service
from services.netting.stage import build

if __name__ == "__main__":
    run_service("netting", build)
