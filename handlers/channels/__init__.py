"""The channels handler: Centrifugo client protocol, server API and HTTP proxy."""
