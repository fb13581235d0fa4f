"""CLI sub-apps, one module per area; ``yikatong.cli`` assembles them."""
