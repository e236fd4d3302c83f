"""The localization service (`vprkit serve`): HTTP API, dynamic batching, a growing map, a web page."""
