"""KoproGo Symbiose shared contracts: events, subjects, settings, NATS helper, CO2 method."""
