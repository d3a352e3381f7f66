"""What the gateway reports about itself: Prometheus metrics (`metrics`)."""
