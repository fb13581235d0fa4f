"""The parts of the issuer key store; callers use the facade, ``clearing.keystore.KeyStore``.

One place each (``docs/keystore.md``):

* ``kek`` — the key-encryption key: parse it, the dev KEK file, from the settings; the
  AES-256-GCM sealing every secret in the store goes through;
* ``master_keys`` — the issuers' master keys: versions, init, rotate, key-ceremony import,
  card key diversification with its LRU cache, the PSAM export;
* ``issuer_ca`` — each issuer's CA key and certificate, card certificates, reading the CA
  certificates without the KEK;
* ``store_file`` — the one JSON file the parts live in, written atomically under a
  cross-process lock (read-modify-write re-reads the file under the lock);
* ``common`` — the error, ids and constants the parts share.
"""
