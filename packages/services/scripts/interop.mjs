// Interop helper for tests/test_typescript.py: reads one JSON command on stdin, runs it
// with the shared client (configured from the environment) and prints one JSON result.
// Values travel over stdin/stdout only, never argv.
import { getVaultClient, closeVaultClient } from '@maily/services/vault';

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const cmd = JSON.parse(Buffer.concat(chunks).toString('utf8'));
const vault = await getVaultClient();
let out;
try {
  switch (cmd.op) {
    case 'encrypt':
      out = { ciphertext: await vault.encrypt(cmd.key, cmd.plaintext, cmd.context) };
      break;
    case 'encrypt-bytes':
      out = { ciphertext: await vault.encrypt(cmd.key, Buffer.from(cmd.b64, 'base64')) };
      break;
    case 'decrypt':
      out = { plaintext: await vault.decrypt(cmd.key, cmd.ciphertext, cmd.context === undefined ? {} : { context: cmd.context }) };
      break;
    case 'decrypt-bytes':
      out = { b64: Buffer.from(await vault.decrypt(cmd.key, cmd.ciphertext, { asBytes: true })).toString('base64') };
      break;
    case 'config':
      out = { config: await vault.getConfig(), version: await vault.getSecretVersion(`${vault.kvMount}/data/config`) };
      break;
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
} catch (e) {
  out = { error: e.name, message: e.message };
}
await closeVaultClient();
process.stdout.write(JSON.stringify(out) + '\n');
