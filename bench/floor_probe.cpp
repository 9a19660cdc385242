// The floor of fleet_bench's idle-memory figure: a process that links what a
// node cannot do without, the Debian shared libraries of nats.c, OpenSSL 3
// and the C++ runtime, connects to the broker, starts OpenSSL's default
// provider (as any digest or signature does) and then idles. Nothing of
// bosun's own. fleet_bench reads its VmRSS beside the nodes'.
//   usage: floor_probe NATS_URL
#include <nats/nats.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <unistd.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: floor_probe NATS_URL\n");
    return 2;
  }
  natsConnection* conn = nullptr;
  natsStatus s = natsConnection_ConnectTo(&conn, argv[1]);
  if (s != NATS_OK) {
    std::fprintf(stderr, "floor_probe: cannot connect to %s: %s\n", argv[1], natsStatus_GetText(s));
    return 1;
  }
  std::string text = "digest me";
  unsigned char md[EVP_MAX_MD_SIZE], rnd[32];
  unsigned int len = 0;
  if (EVP_Digest(text.data(), text.size(), md, &len, EVP_sha256(), nullptr) != 1 ||
      RAND_bytes(rnd, sizeof rnd) != 1) {
    std::fprintf(stderr, "floor_probe: OpenSSL failed\n");
    return 1;
  }
  std::printf("ready\n");
  std::fflush(stdout);
  for (;;) ::pause();  // until killed
}
