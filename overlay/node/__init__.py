"""The node: assembly of the protocols (node.py), its config, and the local API (api.py, with its
guard and limits). Nothing here is imported by the layers below; the CLI sits above."""
