"""The fraud service: `python -m services.fraud`."""
from services.common.service import run_service
from services.fraud.stage import build

if __name__ == "__main__":
    run_service("fraud", build)
