"""order_service: takes orders over HTTP and follows each one to completed or cancelled."""
