# Three-node raft variant: the same file on vault-0, vault-1 and vault-2 (StatefulSet),
# with node_id, api_addr and cluster_addr per pod from the environment: OpenBao reads
# BAO_RAFT_NODE_ID, BAO_API_ADDR and BAO_CLUSTER_ADDR (set them from the pod name and IP).
# Each node joins the others over TLS; clients may use any node (a standby forwards to the
# active node). tests/test_server_configs.py starts this file on loopback and kills the leader.
ui            = false
disable_mlock = true

listener "tcp" {
  address                  = "0.0.0.0:8200"
  cluster_address          = "0.0.0.0:8201"
  tls_cert_file            = "/vault/tls/tls.crt"
  tls_key_file             = "/vault/tls/tls.key"
  tls_min_version          = "tls12"
  tls_disable_client_certs = true
}

storage "raft" {
  path = "/vault/data"

  retry_join {
    leader_api_addr         = "https://vault-0.vault-internal.vault.svc:8200"
    leader_ca_cert_file     = "/vault/tls/ca.crt"
    leader_tls_servername   = "vault-0.vault-internal"
  }
  retry_join {
    leader_api_addr         = "https://vault-1.vault-internal.vault.svc:8200"
    leader_ca_cert_file     = "/vault/tls/ca.crt"
    leader_tls_servername   = "vault-1.vault-internal"
  }
  retry_join {
    leader_api_addr         = "https://vault-2.vault-internal.vault.svc:8200"
    leader_ca_cert_file     = "/vault/tls/ca.crt"
    leader_tls_servername   = "vault-2.vault-internal"
  }
}

service_registration "kubernetes" {}

# The audit device's options must be identical on every node (OpenBao refuses a differing
# file_path when a standby becomes active and seals itself): keep the same path everywhere.
audit "file" "file" {
  description = "every request and response, HMAC'd values"
  options {
    file_path = "/vault/audit/audit.log"
    mode      = "0600"
  }
}

telemetry {
  prometheus_retention_time = "30s"
  disable_hostname          = true
}
