#include "migrate/channel.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

namespace vmctl::migrate {

Result<std::string> read_text_file(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) {
    return Error::user(fmt::format("cannot read {} {}: {}", what, path, std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

Result<std::shared_ptr<grpc::Channel>> make_channel(const std::string& address,
                                                    const TlsConfig& tls, int lane) {
  grpc::ChannelArguments args;
  if (lane > 0) args.SetInt("vmctl.lane", lane);
  // Migration chunks and console lines are small, but a VmInfo with stats can exceed defaults
  // on big guests; records are sent in 1 MiB chunks.
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  if (address.rfind("unix:", 0) == 0 || (!address.empty() && address[0] == '/')) {
    std::string target = address[0] == '/' ? "unix:" + address : address;
    return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  }
  if (!tls.complete()) {
    return Error::user(fmt::format(
        "{} is a TCP address: vmctld only speaks mutual TLS over TCP; give --tls-ca, --tls-cert "
        "and --tls-key (or use a unix:/path address)",
        address));
  }
  // A peer that vanishes (host down, link cut) must fail the stream in seconds, not at the TCP
  // timeout: ping every second, give up after three without an answer.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 1000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 3000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = TRY(read_text_file(tls.ca, "TLS CA"));
  ssl.pem_cert_chain = TRY(read_text_file(tls.cert, "TLS certificate"));
  ssl.pem_private_key = TRY(read_text_file(tls.key, "TLS key"));
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(ssl), args);
}

}  // namespace vmctl::migrate
