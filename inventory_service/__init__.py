"""inventory_service: owns products, prices and stock; holds, sells and returns stock per order."""
