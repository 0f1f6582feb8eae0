"""The commands, one module per noun as Docker's CLI groups them: ``swarm`` (docker swarm …),
``system`` (info, version), ``node``, ``network``. Each module lists its top-level commands in
``COMMANDS``; ``swarmctl.main`` registers them on the root group.
"""
