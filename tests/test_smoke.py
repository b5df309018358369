def test_it_answers_healthz(client, db):
    assert client.get("/healthz").json() == {"status": "ok"}
