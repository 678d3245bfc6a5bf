// Package swu reads and writes SWUpdate images (.swu).
//
// A .swu is a cpio archive in "newc" (magic 070701) or "crc" (070702)
// format. Its first member is sw-description, a libconfig (or JSON)
// document naming the software version, the hardware revisions it is for
// and the images, files and scripts to install, each with the sha256 of
// its payload. The optional second member, sw-description.sig, is a
// detached CMS SignedData over sw-description; the payloads follow. So the
// signature covers sw-description, and sw-description covers every payload
// by digest: that is the whole chain of trust, from the CA a device is
// given (swupdate -k CA.pem) to each byte it installs.
//
// Parse streams: it checks the crc format's per-member byte sum and each
// payload's sha256 as the bytes pass, never holding a payload in memory.
// It is strict, and refuses with an error of code EINVALID (ETOOLARGE for
// oversize metadata) an archive that is not newc/crc cpio, that does not
// start with sw-description, whose sw-description does not parse or names
// a file without a sha256, a payload not named in sw-description or a
// named one that is absent, a member that is not a plain regular file, a
// digest or crc mismatch, and, when Options.Roots is set, a missing
// signature or one that does not verify to Roots with the extended key
// usage SWUpdate checks (emailProtection unless Options.KeyUsages says
// otherwise).
//
// Write makes what Debian's swupdate accepts: a crc archive with a
// libconfig sw-description, a SHA-256 CMS signature with the signer
// certificate embedded (like openssl cms -sign -outform DER -nosmimecap
// -binary) and the payloads. CMS comes from github.com/smallstep/pkcs7;
// the signer's certificate chain and key usage are checked here with
// crypto/x509. Resign adds or replaces the signature of an existing image,
// streaming, and keeps its payloads and cpio format.
package swu
