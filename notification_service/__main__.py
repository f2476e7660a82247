"""`python -m notification_service [serve|migrate]`."""

from notification_service.app import create_app
from notification_service.settings import Settings
from web.server import main

main(Settings.from_env(), create_app)
