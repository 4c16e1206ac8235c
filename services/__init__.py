"""The service layer: one handler per command and step, one module per capability, each
reading like its sentence in docs/SPEC.md.  A handler takes the validated command and a
unit of work (``infra/uow.py``; in tests ``infra/uow_fake.py``), asks the domain to decide
and its repositories to do the I/O.  Actors and the CLI call these handlers."""
