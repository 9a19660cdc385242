// The `bosun` executable: a thin main over the host library.
#include <bosun/host/cli.hpp>

int main(int argc, char** argv) {
  return bosun::host::cli_main(argc, argv);
}
