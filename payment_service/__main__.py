"""`python -m payment_service [serve|migrate]`."""

from payment_service.app import create_app
from payment_service.settings import Settings
from web.server import main

main(Settings.from_env(), create_app)
