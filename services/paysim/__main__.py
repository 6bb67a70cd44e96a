"""`python -m services.paysim`: the demo's simulated payment system (services/paysim/app.py)."""

from services.paysim.app import main

if __name__ == "__main__":
    main()
