"""The tools the tests share; each fact of the harness is written here
once.

  wsproto   RFC 6455 frame codec, opening handshake, raw Client, Backend
            (on TCP or unix sockets, slow readers), connect(), streaming()
  nginx     a real nginx with the module (Nginx), proxy_server(), REASONS,
            http_get(), status_server(), status_value()
  backend   a backend in its own process (BackendProcess), t/backends
  netns     network namespaces, veth pairs, TunLink (root)
  fixtures  the bodies of the factory fixtures of the conftests
  tls       a throwaway self-signed certificate
  wslog     what python3-websockets read and wrote (FrameLog)
"""
