# Production OpenBao/Vault server (vault-0 in namespace vault): integrated (raft)
# storage, TLS on the API and cluster ports, and a declarative file audit device
# (the guide's best practice 6: every access is logged, from the first request).
ui            = false
disable_mlock = true   # raft storage: mlock is not needed and breaks in containers
api_addr      = "https://vault-0.vault-internal.vault.svc:8200"
cluster_addr  = "https://vault-0.vault-internal.vault.svc:8201"

listener "tcp" {
  address                  = "0.0.0.0:8200"
  cluster_address          = "0.0.0.0:8201"
  tls_cert_file            = "/vault/tls/tls.crt"
  tls_key_file             = "/vault/tls/tls.key"
  tls_client_ca_file       = "/vault/tls/ca.crt"
  tls_min_version          = "tls12"
  tls_disable_client_certs = true
  telemetry {
    unauthenticated_metrics_access = false
  }
}

storage "raft" {
  path    = "/vault/data"
  node_id = "vault-0"
}

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
