from services.captures.stage import build
from services.common.service import run_service

if __name__ == "__main__":
    run_service("captures", build)
