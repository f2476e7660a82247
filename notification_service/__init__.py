"""notification_service: tells customers how their orders ended, and when they were refunded."""
