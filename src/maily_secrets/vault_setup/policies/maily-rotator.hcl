# Policy "maily-rotator": `mailyctl secrets rotate` (the CronJob vault-secret-rotation,
# Kubernetes auth role "maily-rotator", service account vault/vault-secret-rotation).
# What rotation needs and no more: the consumer secrets (read-modify-write with
# check-and-set: create+read+update, never delete/destroy), their metadata (age,
# versions), its own state and lock under rotation/, its admin credentials under
# rotator/, and rotate/config/rewrap of the transit key maily-enc-key.

path "maily/data/config" {
  capabilities = ["create", "read", "update"]
}
path "maily/data/api-keys" {
  capabilities = ["create", "read", "update"]
}
path "maily/data/credentials" {
  capabilities = ["create", "read", "update"]
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

# The change feed's beacon: each promote bumps the entry of the secret it wrote
# (read-modify-write with check-and-set: create+read+update, never delete).
path "maily/data/_changes" {
  capabilities = ["create", "read", "update"]
}
path "maily/metadata/_changes" {
  capabilities = ["read"]
}

# Rotation state (one document per type), the run lock and rewrap progress.
path "maily/data/rotation/*" {
  capabilities = ["create", "read", "update"]
}
path "maily/metadata/rotation/*" {
  capabilities = ["read", "list"]
}
path "maily/metadata/rotation" {
  capabilities = ["list"]
}

# The rotator's own credentials (PostgreSQL/Redis admin, notification webhook).
path "maily/data/rotator/*" {
  capabilities = ["create", "read", "update"]
}
path "maily/metadata/rotator/*" {
  capabilities = ["read"]
}

# The transit key: versions, a new version, min_decryption_version, rewrap, and
# the encrypt/decrypt probe that verifies a rotation.
path "transit/keys/maily-enc-key" {
  capabilities = ["read"]
}
path "transit/keys/maily-enc-key/rotate" {
  capabilities = ["update"]
}
path "transit/keys/maily-enc-key/config" {
  capabilities = ["update"]
}
path "transit/rewrap/maily-enc-key" {
  capabilities = ["update"]
}
path "transit/encrypt/maily-enc-key" {
  capabilities = ["update"]
}
path "transit/decrypt/maily-enc-key" {
  capabilities = ["update"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

# Its own capabilities (`mailyctl doctor`), also without the default policy.
path "sys/capabilities-self" {
  capabilities = ["update"]
}
