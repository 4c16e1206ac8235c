"""The operations console: ``ballast web`` (server-rendered pages over the CLI's views).

Reads go through the same view functions the CLI prints; every action is a command sent
through :func:`infra.commands.send_command`, or the same RabbitMQ operation the CLI runs
(dead letters).  The console writes only its own tables (operators, audit, settings).
"""
