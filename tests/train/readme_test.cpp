// The README's config reference is generated from the config table and must not drift from it.
#include <fstream>
#include <sstream>

#include "tests/testing.h"
#include "train/config.h"

namespace sy::test {
namespace {

TEST(Readme, ConfigReferenceMatchesTheCode) {
  std::ifstream in(std::string(SY_SOURCE_DIR) + "/README.md");
  ASSERT_TRUE(in.good()) << "README.md not found under " << SY_SOURCE_DIR;
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_NE(text.str().find(config_reference_markdown()), std::string::npos)
      << "README.md's config reference is stale: paste the output of `switchyard config-reference`";
}

}  // namespace
}  // namespace sy::test
