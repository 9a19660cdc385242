// The `bosun` command line (DESIGN §10).
#pragma once

namespace bosun::host {

int cli_main(int argc, char** argv);

}  // namespace bosun::host
