"""Dev tooling: the embedded dev OpenBao (``server``), the local stand-ins for AWS IAM
and an SMTP provider (``standins``) and the end-to-end demo (``demo``).

Only ``mailyctl dev``, ``make demo``, the tests and the benchmarks use it: the runtime
(``maily_secrets``, ``maily_secrets.service``, ``apps.api.services.vault_service``)
never imports this package.  Keep this file free of imports so that importing one
submodule loads no other.
"""
