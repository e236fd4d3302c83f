"""The service's endpoints, one router per concern: health, localize, streams, map."""
