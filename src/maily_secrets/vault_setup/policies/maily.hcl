# Policy "maily": the application (Kubernetes auth role "maily", service account
# maily/maily). Least privilege (the guide's best practice 4): its three secrets,
# their metadata (secret listeners poll current_version), the change feed's beacon
# (read), encryption with
# maily-enc-key, its own token, and dynamic PostgreSQL credentials. Nothing else:
# no list, no write, no other key, no sys/ beyond its own leases.

path "maily/data/config" {
  capabilities = ["read"]
}
path "maily/data/api-keys" {
  capabilities = ["read"]
}
path "maily/data/credentials" {
  capabilities = ["read"]
}

path "maily/metadata/config" {
  capabilities = ["read"]
}
path "maily/metadata/api-keys" {
  capabilities = ["read"]
}
path "maily/metadata/credentials" {
  capabilities = ["read"]
}

# The change feed's beacon (maily_secrets.changes): listeners poll its metadata once per
# interval and read its data only when it moved. Read only: the app writes nothing.
path "maily/data/_changes" {
  capabilities = ["read"]
}
path "maily/metadata/_changes" {
  capabilities = ["read"]
}

# Encryption as a service. "update" only: without "create" an encrypt with a
# mistyped key can never create a key (bootstrap also sets disable_upsert).
path "transit/encrypt/maily-enc-key" {
  capabilities = ["update"]
}
path "transit/decrypt/maily-enc-key" {
  capabilities = ["update"]
}

# Its own token: renewal at 2/3 of the TTL, lookup for `mailyctl doctor`.
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

# Dynamic database credentials (maily_secrets.leases renews and, on close, revokes them).
path "database/creds/maily-app" {
  capabilities = ["read"]
}
path "sys/leases/renew" {
  capabilities = ["update"]
}
path "sys/leases/revoke" {
  capabilities = ["update"]
}

# Its own capabilities (`mailyctl doctor`), also without the default policy.
path "sys/capabilities-self" {
  capabilities = ["update"]
}
