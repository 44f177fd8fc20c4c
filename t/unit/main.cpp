// gcc 12 at -O1 with -fsanitize warns falsely inside <regex> (GCC PR105562)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
