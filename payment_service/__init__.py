"""payment_service: keeps customers' accounts, charges reserved orders, refunds cancelled ones."""
