//! Whom the client talks to: credentials stay with the registry's origin
//! across redirects, messages hide presigned queries, TLS is verified.

use super::*;

#[test]
fn redirects_drop_credentials_across_origins() {
    let blob = b"layer data".to_vec();
    let d = Digest::of(&blob);
    let cdn = {
        let blob = blob.clone();
        Fake::start(move |req, _| {
            assert!(
                !req.headers.contains_key("authorization"),
                "credentials leaked to the CDN"
            );
            ok(&blob, &[])
        })
    };
    let cdn_url = format!("http://{}/signed?x=1", cdn.base());
    let fake = Fake::start(move |req, _| match req.headers.get("authorization") {
        Some(_) => status(307, &[("Location", &cdn_url)]),
        None => status(401, &[("WWW-Authenticate", "Basic realm=\"r\"")]),
    });
    let c = client(
        &fake,
        Options {
            credential: creds("user", "pass"),
            ..opts()
        },
    );
    let desc = Descriptor {
        media_type: media::OCI_CONFIG.into(),
        digest: d,
        size: blob.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
    };
    assert_eq!(c.blob_bytes(&desc, 1 << 20).unwrap(), blob);
    assert_eq!(cdn.seen().len(), 1);
}

#[test]
fn a_401_from_a_redirect_target_gets_no_credentials() {
    // Whoever the registry redirects to may name a token realm of its own:
    // the user's credentials must never reach it.
    let realm = Fake::start(|_, _| ok(br#"{"token":"stolen"}"#, &[]));
    let cdn = {
        let challenge = format!(
            "Bearer realm=\"http://{}/token\",service=\"x\"",
            realm.base()
        );
        Fake::start(move |req, _| {
            assert!(
                !req.headers.contains_key("authorization"),
                "credentials leaked to the CDN"
            );
            status(401, &[("WWW-Authenticate", &challenge)])
        })
    };
    let cdn_url = format!("http://{}/signed?sig=SECRET", cdn.base());
    let fake = Fake::start(move |_, _| status(307, &[("Location", &cdn_url)]));
    let c = client(
        &fake,
        Options {
            credential: creds("user", "pass"),
            ..opts()
        },
    );
    let e = c.manifest("t").unwrap_err().to_string();
    assert!(
        realm.seen().is_empty(),
        "the foreign realm was asked: {:?}",
        realm.seen()
    );
    assert!(!cdn.seen().is_empty());
    assert!(
        e.contains("HTTP 401") && e.contains(&cdn.base()) && e.contains("redirected"),
        "{e}"
    );
    assert!(!e.contains("SECRET"), "{e}");
}

#[test]
fn redirect_errors_do_not_show_the_query() {
    let fake = Fake::start(|_, _| {
        status(
            307,
            &[("Location", "ftp://cdn.example/b?X-Amz-Signature=SECRET")],
        )
    });
    let e = client(&fake, opts()).manifest("t").unwrap_err().to_string();
    assert!(
        e.contains("ftp://cdn.example/b") && !e.contains("SECRET"),
        "{e}"
    );
}

#[test]
fn a_self_signed_certificate_is_refused() {
    let cert = include_bytes!("../../../testdata/tls/cert.pem");
    let key = include_bytes!("../../../testdata/tls/key.pem");
    let id = native_tls::Identity::from_pkcs8(cert, key).unwrap();
    let acceptor = native_tls::TlsAcceptor::new(id).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(0));
    let r2 = requests.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            // The handshake fails on the client's side: no request comes.
            if let Ok(mut s) = acceptor.accept(c) {
                let mut b = [0u8; 1];
                if std::io::Read::read(&mut s, &mut b).unwrap_or(0) > 0 {
                    *r2.lock().unwrap() += 1;
                }
            }
        }
    });
    let r = Reference::parse(&format!("127.0.0.1:{port}/test/img:t")).unwrap();
    let o = Options {
        plain_http: false,
        credential: creds("user", "pass"),
        ..opts()
    };
    let e = Client::new(&r, o).manifest("t").unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, RegistryError::Tls { .. }), "{text}");
    assert!(!text.contains('\n'), "{text}");
    assert!(text.contains("certificate verify failed"), "{text}");
    assert!(text.contains("add its CA"), "{text}");
    assert!(
        !text.contains("--nohttps"),
        "not a plain-HTTP registry: {text}"
    );
    assert_eq!(*requests.lock().unwrap(), 0);
}
