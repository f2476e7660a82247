"""`python -m payment_service [serve|migrate]`."""

from outbox.server import main
from payment_service.app import create_app
from payment_service.settings import Settings

main(Settings.from_env(), create_app)
