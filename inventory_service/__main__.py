"""`python -m inventory_service [serve|migrate]`."""

from inventory_service.app import create_app
from inventory_service.settings import Settings
from web.server import main

main(Settings.from_env(), create_app)
