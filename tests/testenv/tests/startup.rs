//! A component that fails to start is named, with the tail of its log.

use testenv::{Error, Options, TestEnv};

#[tokio::test]
async fn a_failing_component_is_named_with_its_log_tail() {
    let options = Options {
        apiserver_args: vec!["--no-such-flag=1".into()],
        ..Options::default()
    };
    match TestEnv::start(options).await {
        Ok(env) => panic!("the API server accepted an unknown flag: {env:?}"),
        Err(Error::ComponentExited {
            component, tail, ..
        }) => {
            assert_eq!(component, "kube-apiserver");
            assert!(
                tail.contains("unknown flag: --no-such-flag"),
                "log tail: {tail}"
            );
        }
        Err(other) => panic!("expected kube-apiserver to exit, got: {other}"),
    }
}

#[tokio::test]
async fn too_many_nodes_is_refused_before_anything_starts() {
    let mut options = Options::default();
    options.kubelet.nodes = 500;
    match TestEnv::start(options).await {
        Err(Error::Options(message)) => assert!(message.contains("500"), "{message}"),
        other => panic!("expected an options error, got {other:?}"),
    }
}
