// vmctld: the daemon that manages this host's VMs and sends and receives live migrations.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <thread>

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "base/alloc.h"
#include "base/path.h"
#include "base/rotating_log.h"
#include "base/size.h"
#include "daemon/config.h"
#include "daemon/host_report_cache.h"
#include "daemon/service.h"
#include "daemon/unix_listener.h"
#include "daemon/vm_manager.h"
#include "migrate/channel.h"

namespace {

// The vmctl that runs each VM: next to vmctld when installed, or in the build tree's cli/.
std::string default_vmctl() {
  char self[PATH_MAX] = {};
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  std::string dir = n > 0 ? std::string(self, static_cast<size_t>(n)) : "";
  dir = dir.substr(0, dir.rfind('/'));
  for (const std::string& candidate : {dir + "/vmctl", dir + "/../cli/vmctl"}) {
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "vmctl";
}

// The access policy from the configuration file (daemon/config.md); defaults without one.
vmctl::Result<vmctl::daemon::AccessPolicy> access_policy(
    const vmctl::daemon::DaemonConfig& config) {
  using namespace vmctl::daemon;
  AccessPolicy access;
  if (config.grants) access.authorizer = TRY(Authorizer::from_grants(*config.grants));
  if (config.allowed_paths)
    access.paths = TRY(PathPolicy::under(*config.allowed_paths, "paths.allowed"));
  if (config.migration_sockets) {
    access.migration_sockets =
        TRY(PathPolicy::under(*config.migration_sockets, "paths.migration_sockets"));
  }
  return access;
}

// [sandbox] and the path policy as the VM processes' sandbox (daemon/config.md).
vmctl::daemon::VmSandbox vm_sandbox(const vmctl::daemon::SandboxConfig& config,
                                    const vmctl::daemon::AccessPolicy& access,
                                    const vmctl::daemon::TlsFiles& tls,
                                    const std::string& data_socket_dir) {
  vmctl::daemon::VmSandbox sandbox;
  sandbox.jail = config.jail && ::geteuid() == 0;
  if (config.jail && !sandbox.jail) {
    spdlog::warn("vmctld is not root: its VM processes run without their namespaces and jail");
  }
  sandbox.seccomp = config.seccomp;
  sandbox.user = config.user;
  sandbox.uid = config.uid;
  sandbox.gid = config.gid;
  if (!access.paths.unrestricted()) {
    sandbox.writable = access.paths.roots();
    if (!access.migration_sockets.unrestricted()) {
      for (const std::string& root : access.migration_sockets.roots()) {
        sandbox.writable.push_back(root);
      }
    }
    sandbox.writable.push_back(data_socket_dir);
    for (const std::string& file : {tls.ca, tls.cert, tls.key}) {
      if (!file.empty()) sandbox.read_only.push_back(vmctl::absolute_path(file));
    }
  }
  return sandbox;
}

}  // namespace

int main(int argc, char** argv) {
  vmctl::keep_streaming_buffers();
  using namespace vmctl;
  CLI::App app{"vmctld - the vmctl daemon: runs VMs, snapshots and live migration over gRPC"};
  std::string socket = "/run/vmctld.sock";
  std::string listen;
  daemon::TlsFiles tls;
  daemon::ManagerOptions manager_options;
  manager_options.state_dir = "/var/lib/vmctld";
  manager_options.vmctl_binary = default_vmctl();
  std::string log_level = "info";
  std::string config_path;
  app.set_version_flag("--version", std::string("vmctld ") + VMCTL_VERSION);
  app.add_option("--socket", socket, "Control endpoint: a unix socket, mode 0600")
      ->capture_default_str();
  app.add_option("--listen", listen,
                 "Also listen on HOST:PORT over TCP with mutual TLS (needs --tls-*), for "
                 "migrations from other hosts and remote control");
  app.add_option("--tls-ca", tls.ca, "PEM CA that signs the peers' certificates");
  app.add_option("--tls-cert", tls.cert, "PEM certificate of this daemon (server and client)");
  app.add_option("--tls-key", tls.key, "PEM private key of this daemon");
  app.add_option("--state-dir", manager_options.state_dir,
                 "Where VM records, control sockets and console logs live")
      ->capture_default_str();
  app.add_option("--vmctl", manager_options.vmctl_binary, "The vmctl binary that runs each VM")
      ->capture_default_str();
  app.add_option("--console-log-max", manager_options.console_log_max,
                 "Cap each VM's console log at this size: when full it becomes console.log.1 "
                 "(replacing the one before) and a new console.log starts")
      ->capture_default_str();
  std::string max_guest_memory;
  app.add_option("--max-guest-memory", max_guest_memory,
                 "The largest guest this host takes (created, restored or migrated in), e.g. "
                 "64G; default: the host's RAM");
  app.add_option("--config", config_path,
                 "TOML file with roles (who may call what), the directories callers may name "
                 "files in, and who may reach the unix socket (daemon/config.md); without one, "
                 "root and this user are operators and migration peers on the unix socket, every "
                 "certificate the CA signed is a migration peer, and every path is allowed")
      ->check(CLI::ExistingFile);
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->capture_default_str();
  app.footer(
      "VMs run in their own processes and keep running when vmctld stops; a restarted vmctld\n"
      "adopts them (or reports them LOST). Standard gRPC health checking and server reflection\n"
      "are on. There is no unauthenticated TCP: --listen requires "
      "--tls-ca/--tls-cert/--tls-key.\n\n"
      "Example:\n"
      "  vmctld --socket /run/vmctld.sock --state-dir /var/lib/vmctld &\n"
      "  vmctl --host unix:/run/vmctld.sock create vm1 --memory 512M --start");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_default_logger(spdlog::stderr_color_mt("vmctld"));
  spdlog::set_level(spdlog::level::from_str(log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  if (Result<uint64_t> cap = parse_size(manager_options.console_log_max);
      !cap.ok() || *cap < kMinRotatingLogBytes) {
    std::fprintf(stderr, "vmctld: --console-log-max %s: %s\n",
                 manager_options.console_log_max.c_str(),
                 cap.ok() ? "too small: use at least 4096 bytes" : cap.error().message().c_str());
    return 2;
  }
  if (!max_guest_memory.empty()) {
    Result<uint64_t> limit = parse_size(max_guest_memory);
    if (!limit.ok()) {
      std::fprintf(stderr, "vmctld: --max-guest-memory: %s\n", limit.error().message().c_str());
      return 2;
    }
    manager_options.max_guest_memory = *limit;
  }
  if (!listen.empty() && (tls.ca.empty() || tls.cert.empty() || tls.key.empty())) {
    std::fprintf(stderr,
                 "vmctld: --listen %s needs --tls-ca, --tls-cert and --tls-key: vmctld has no "
                 "unauthenticated TCP listener\n",
                 listen.c_str());
    return 2;
  }
  daemon::DaemonConfig config;
  if (!config_path.empty()) {
    Result<daemon::DaemonConfig> loaded = daemon::load_daemon_config(config_path);
    if (!loaded.ok()) {
      std::fprintf(stderr, "vmctld: %s\n", loaded.error().message().c_str());
      return 2;
    }
    config = std::move(*loaded);
  }
  Result<daemon::AccessPolicy> access = access_policy(config);
  if (!access.ok()) {
    std::fprintf(stderr, "vmctld: %s%s\n", config_path.empty() ? "" : (config_path + ": ").c_str(),
                 access.error().message().c_str());
    return 2;
  }
  if (!config.sandbox.user.empty() && (access->paths.unrestricted() || !config.sandbox.jail)) {
    // Outside a jail the VM's folder sits below the daemon's private state directory, which
    // another user cannot reach.
    std::fprintf(stderr,
                 "vmctld: %s: [sandbox] user needs the jail: set [paths] allowed (and keep "
                 "[sandbox] jail = true)\n",
                 config_path.c_str());
    return 2;
  }
  // Checked when the file was read: parse cannot fail here.
  daemon::TrustedNetworks trusted;
  if (Result<daemon::TrustedNetworks> t = daemon::TrustedNetworks::parse(config.trusted_networks);
      t.ok()) {
    trusted = std::move(*t);
  }
  if (!trusted.empty()) {
    spdlog::info("plaintext migration data with peers on {} (both daemons must list each other)",
                 trusted.describe());
  }
  daemon::PeerCredentials unix_peers;
  access->authorizer.set_peer_credentials(&unix_peers);
  std::string data_socket_dir = manager_options.state_dir + "/data";
  manager_options.sandbox = vm_sandbox(config.sandbox, *access, tls, data_socket_dir);
  // The signals that stop the daemon are taken by a thread of their own (blocked everywhere else,
  // including gRPC's threads, which inherit the mask).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  ::umask(0077);  // the control socket and the state files are the operator's alone

  Result<std::unique_ptr<daemon::VmManager>> manager = daemon::VmManager::open(manager_options);
  if (!manager.ok()) {
    std::fprintf(stderr, "vmctld: %s\n", manager.error().message().c_str());
    return manager.error().exit_code();
  }
  Result<migrate::MigrationJournal> journal =
      migrate::MigrationJournal::open(manager_options.state_dir + "/migrations");
  if (!journal.ok()) {
    std::fprintf(stderr, "vmctld: %s\n", journal.error().message().c_str());
    return journal.error().exit_code();
  }
  daemon::IncomingLimits incoming_limits;
  incoming_limits.max_guest_memory = manager_options.max_guest_memory;
  if (!listen.empty()) {
    // The receiving VM processes listen on the daemon's address (another port each).
    size_t colon = listen.rfind(':');
    std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
      host = host.substr(1, host.size() - 2);
    }
    incoming_limits.data.listen_host = host;
  }
  incoming_limits.data.tls = migrate::TlsConfig{tls.ca, tls.cert, tls.key};
  // Its own folder: the only part of the state directory a jailed VM process sees.
  if (::mkdir(data_socket_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    std::fprintf(stderr, "vmctld: cannot create %s: %s\n", data_socket_dir.c_str(),
                 std::strerror(errno));
    return 1;
  }
  if (!manager_options.sandbox.user.empty() &&
      ::chown(data_socket_dir.c_str(), manager_options.sandbox.uid, manager_options.sandbox.gid) !=
          0) {
    std::fprintf(stderr, "vmctld: chown %s to the sandbox user: %s\n", data_socket_dir.c_str(),
                 std::strerror(errno));
    return 1;
  }
  incoming_limits.data.socket_dir = data_socket_dir;
  incoming_limits.data.trusted = trusted;
  daemon::IncomingMigrations incoming(**manager, *journal, incoming_limits);
  daemon::OutgoingMigrations outgoing(**manager, *journal,
                                      migrate::TlsConfig{tls.ca, tls.cert, tls.key}, trusted);
  (*manager)->set_exit_listener(
      [&incoming](const std::string& vm, pid_t pid) { incoming.process_ended(vm, pid); });
  // Migrations that were under way when the daemon last stopped: settle them before serving.
  incoming.recover();
  outgoing.recover();
  journal->prune(7 * 24 * 3600 * 1000ll);
  daemon::VmctlService vmctl_service(**manager, outgoing, *access);
  daemon::MigrationReceiverService receiver(incoming, access->authorizer);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.SetMaxReceiveMessageSize(64 << 20);
  // Peers ping every second (migrate/channel.cc) so a dead link fails a migration quickly; accept
  // that, and ping back so a receiving daemon notices a vanished source too.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 3000);
  // The unix socket is accepted by the daemon itself, to learn each caller's uid.
  daemon::UnixSocketOptions socket_options{socket, config.socket_mode,
                                           config.socket_group.value_or(static_cast<gid_t>(-1))};
  Result<std::unique_ptr<daemon::UnixListener>> unix_listener =
      daemon::UnixListener::open(socket_options, unix_peers);
  if (!unix_listener.ok()) {
    std::fprintf(stderr, "vmctld: cannot listen on unix:%s: %s\n", socket.c_str(),
                 unix_listener.error().message().c_str());
    return 1;
  }
  if (!listen.empty()) {
    grpc::SslServerCredentialsOptions ssl(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    Result<std::string> ca = migrate::read_text_file(tls.ca, "TLS CA");
    Result<std::string> cert = migrate::read_text_file(tls.cert, "TLS certificate");
    Result<std::string> key = migrate::read_text_file(tls.key, "TLS key");
    for (const auto* r : {&ca, &cert, &key}) {
      if (!r->ok()) {
        std::fprintf(stderr, "vmctld: %s\n", r->error().message().c_str());
        return 2;
      }
    }
    ssl.pem_root_certs = *ca;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    builder.AddListeningPort(listen, grpc::SslServerCredentials(ssl));
  }
  builder.RegisterService(&vmctl_service);
  builder.RegisterService(&receiver);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    std::fprintf(stderr, "vmctld: cannot listen on %s: is the address in use?\n", listen.c_str());
    return 1;
  }
  (*unix_listener)->serve(server.get());
  // This host's report (made once: it runs a probe VM, tens of milliseconds) is made now, so
  // that the first migration in either direction does not wait for it.
  std::jthread warm_host_report([] {
    Result<nlohmann::json> report = daemon::cached_host_report();
    if (!report.ok()) spdlog::warn("host report: {}", report.error().message());
  });
  spdlog::info("vmctld {} listening on unix:{}{}; state in {}; VMs run by {}; {}", VMCTL_VERSION,
               socket, listen.empty() ? "" : fmt::format(" and {} (mutual TLS)", listen),
               manager_options.state_dir, manager_options.vmctl_binary,
               config_path.empty() ? "default access (no --config)" : "access from " + config_path);
  if (access->paths.unrestricted()) {
    spdlog::info(
        "callers may name files anywhere on this host ([paths] allowed in --config "
        "restricts them)");
  }
  const daemon::VmSandbox& sandbox = manager_options.sandbox;
  spdlog::info("VM processes: {}; seccomp {}{}",
               !sandbox.jail ? "no namespaces (the sandbox's jail is off or vmctld is not root)"
               : sandbox.writable.empty()
                   ? "own PID and mount namespace, capabilities dropped, the host's files "
                     "visible ([paths] allowed is unrestricted)"
                   : "own PID and mount namespace, capabilities dropped, a new root holding only "
                     "[paths] allowed",
               sandbox.seccomp, sandbox.user.empty() ? "" : ", as user " + sandbox.user);

  std::thread stopper([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    spdlog::info("{}: stopping (VMs keep running)", strsignal(sig));
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  });
  server->Wait();
  stopper.join();
  unix_listener->reset();  // stops accepting, removes the socket
  (*manager)->set_exit_listener(nullptr);
  return 0;
}
