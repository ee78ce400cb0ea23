"""The faces of p2pdma: terminal text and JSON documents."""
