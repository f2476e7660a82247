"""`python -m order_service [serve|migrate]`."""

from order_service.app import create_app
from order_service.settings import Settings
from web.server import main

main(Settings.from_env(), create_app)
