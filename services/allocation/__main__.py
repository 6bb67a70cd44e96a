from services.common.service import run_service
from services.common.stages import allocation

if __name__ == "__main__":
    run_service("allocation", allocation)
