//! TLS on the API, end to end: real certificates made by the `openssl` command, `curl` and `ctl` as
//! clients, client certificates checked in the handshake, and new certificate files picked up on
//! SIGHUP without closing the listener.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{wait_until, Fixture};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("the openssl command");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA `name`.pem/.key, and a certificate `leaf`.pem/.key signed by it with `ext`.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

fn leaf(dir: &Path, ca: &str, leaf: &str, cn: &str, ext: &str) {
    std::fs::write(dir.join(format!("{leaf}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{leaf}.key"),
            "-out",
            &format!("{leaf}.csr"),
            "-subj",
            &format!("/CN={cn}/O=air-nanny tests"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{leaf}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{leaf}.pem"),
            "-extfile",
            &format!("{leaf}.ext"),
        ],
    );
}

const SERVER_EXT: &str = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n";
const CLIENT_EXT: &str = "extendedKeyUsage=clientAuth\n";

/// curl's exit code and body for GET `path` with these extra arguments.
fn curl(port: u16, path: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("the curl command");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn tls_with_client_certificates_curl_ctl_and_reload() {
    let f = Fixture::with_config(
        "API_TLS_CERT: tls/server.pem\nAPI_TLS_KEY: tls/server.key\nAPI_TLS_CLIENT_CA: tls/clients.pem\n",
    );
    let tls = f.path("conf/tls");
    std::fs::create_dir_all(&tls).unwrap();
    ca(&tls, "ca");
    ca(&tls, "clients");
    ca(&tls, "ca2");
    leaf(&tls, "ca", "server", "air-nanny", SERVER_EXT);
    leaf(&tls, "clients", "maintainer", "maintainer", CLIENT_EXT);
    leaf(&tls, "ca", "stranger", "stranger", CLIENT_EXT); // signed by the wrong CA
    let t = |p: &str| tls.join(p).display().to_string();
    let (cacert, cert, key) = (t("ca.pem"), t("maintainer.pem"), t("maintainer.key"));
    let client = ["--cacert", &cacert, "--cert", &cert, "--key", &key];

    let mut n = f.spawn(&[], None);
    wait_until("the API to answer over TLS", Duration::from_secs(20), || {
        n.check_alive();
        (curl(f.port, "/health", &client).0 == 0).then_some(())
    });
    let (code, body) = curl(f.port, "/task/get", &client);
    assert_eq!(code, 0);
    assert!(body.contains("SUCCESS"), "{body}");
    // No client certificate, or one from another CA: the handshake itself fails.
    assert_ne!(curl(f.port, "/health", &["--cacert", &cacert]).0, 0);
    assert_ne!(
        curl(f.port, "/health", &["--cacert", &cacert, "--cert", &t("stranger.pem"), "--key", &t("stranger.key")]).0,
        0
    );
    // Plain HTTP gets no answer.
    assert_eq!(f.http("GET", "/health", None, None).0, 0);

    // ctl over TLS with the client certificate; the change is audited under the certificate's subject.
    let url = format!("https://127.0.0.1:{}", f.port);
    let svc = f.path("svc.json");
    std::fs::write(&svc, f.direct_service("secured", 0, &[]).to_string()).unwrap();
    let svc = svc.display().to_string();
    let (code, out, err) =
        f.cli(&["ctl", "--url", &url, "--cacert", &cacert, "--cert", &cert, "--key", &key, "set", &svc]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = f.cli(&["ctl", "--url", &url, "--cacert", &cacert, "--cert", &cert, "--key", &key, "audit"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cert:CN=maintainer, O=air-nanny tests") && out.contains("/task/set"), "{out}");
    let (code, _, err) = f.cli(&["ctl", "--url", &url, "--cacert", &cacert, "list"]);
    assert_ne!(code, 0, "no client certificate: {err}");

    // New certificate files, signed by another CA: picked up by the next connection after SIGHUP.
    leaf(&tls, "ca2", "server2", "air-nanny", SERVER_EXT);
    let ca2 = t("ca2.pem");
    let client2 = ["--cacert", &ca2, "--cert", &cert, "--key", &key];
    assert_ne!(curl(f.port, "/health", &client2).0, 0, "the old certificate is still served");
    std::fs::copy(tls.join("server2.pem"), tls.join("server.pem")).unwrap();
    std::fs::copy(tls.join("server2.key"), tls.join("server.key")).unwrap();
    n.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until("the new certificate to be served", Duration::from_secs(10), || {
        (curl(f.port, "/health", &client2).0 == 0).then_some(())
    });
    assert_eq!(n.terminate().code(), Some(0));
}
