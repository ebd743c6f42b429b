"""The authorization-code flow with PKCE, through the stand-in's own login page."""

import re
import time
from urllib.parse import parse_qs, urlsplit


def test_code_flow_s256_issues_verifiable_tokens(iam):
    login = iam.login("alice", scope="openid profile email offline_access", nonce="n-0S6")
    response = iam.exchange_code(login)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"].split() == ["openid", "profile", "email", "offline_access"]
    assert 0 < body["expires_in"] <= 3600
    assert body["refresh_token"]

    access = iam.verify(body["access_token"])
    assert access["sub"] == "3e1f5c2a-7b8d-4c9e-a0f1-2b3c4d5e6f70"
    assert access["iss"] == iam.issuer
    assert access["client_id"] == "hub"
    assert access["preferred_username"] == "alice"
    assert access["groups"] == ["officina", "officina/users"]
    assert access["scope"] == body["scope"]
    assert access["exp"] > access["iat"] and access["jti"]
    assert "aud" not in access  # the iam profile sets aud only when one is asked for

    id_claims = iam.verify(body["id_token"])
    assert id_claims["aud"] == "hub"
    assert id_claims["iss"] == iam.issuer
    assert id_claims["sub"] == access["sub"]
    assert id_claims["nonce"] == "n-0S6"
    assert id_claims["name"] == "Alice Analyst"
    assert id_claims["preferred_username"] == "alice"
    assert id_claims["email"] == "alice@example.org"
    assert id_claims["groups"] == ["officina", "officina/users"]
    assert id_claims["amr"] == ["pwd"]
    assert id_claims["exp"] - id_claims["iat"] == 600


def test_refresh_token_is_iam_shaped(iam):
    refresh = iam.tokens("alice")["refresh_token"]
    # An unsigned JWT with a trailing dot, as INDIGO-IAM hands out.
    assert refresh.count(".") == 2 and refresh.endswith(".")


def test_plain_pkce_works(iam):
    login = iam.login("bob", pkce="plain")
    assert iam.exchange_code(login).status_code == 200


def test_wrong_code_verifier_is_refused(iam):
    login = iam.login("alice")
    wrong = iam.pkce_pair()[0]
    status, error, _ = iam.error_of(iam.exchange_code(login, verifier=wrong))
    assert (status, error) == (400, "invalid_grant")


def test_missing_code_verifier_is_refused(iam):
    login = iam.login("alice")
    status, error, _ = iam.error_of(iam.exchange_code(login, verifier=None))
    assert status == 400 and error == "invalid_request"


def test_code_reuse_is_refused(iam):
    login = iam.login("alice")
    assert iam.exchange_code(login).status_code == 200
    status, error, _ = iam.error_of(iam.exchange_code(login))
    assert (status, error) == (400, "invalid_grant")


def test_code_of_another_client_is_refused(iam):
    login = iam.login("alice", client_id="hub")
    status, error, _ = iam.error_of(iam.exchange_code(login, client_id="rotating"))
    assert (status, error) == (400, "invalid_grant")


def test_unknown_code_is_refused(iam):
    data = {"grant_type": "authorization_code", "code": "made-up",
            "redirect_uri": iam.HUB_CALLBACK}
    status, error, _ = iam.error_of(iam.token_request("hub", data))
    assert (status, error) == (400, "invalid_grant")


def test_wrong_redirect_uri_gives_html_400_without_redirect(iam):
    params, _ = iam.authorize_params(redirect_uri="https://evil.example/callback")
    response = iam.get("/authorize", params=params)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert "evil.example" not in response.text


def test_unknown_client_gives_html_400_without_redirect(iam):
    params, _ = iam.authorize_params(client_id="nobody")
    response = iam.get("/authorize", params=params)
    assert response.status_code == 400 and "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")


def test_redirect_uri_must_match_at_token_endpoint(iam):
    login = iam.login("alice")
    login.redirect_uri = iam.HUB_CALLBACK + "/other"
    status, error, _ = iam.error_of(iam.exchange_code(login))
    assert (status, error) == (400, "invalid_grant")


def test_login_page_is_self_contained(iam):
    params, _ = iam.authorize_params()
    page = iam.get("/authorize", params=params)
    assert page.status_code == 200
    assert "Officina IAM stand-in" in page.text
    assert re.search(r"<h1>[^<]*Officina IAM stand-in", page.text)
    assert 'type="submit"' in page.text
    # Nothing is loaded from anywhere: no external scripts, fonts or stylesheets.
    assert "<script" not in page.text and "http" not in page.text.split("<form")[0]
    assert not re.search(r'(src|href)="', page.text)


def test_wrong_password_shows_the_form_again(iam):
    params, _ = iam.authorize_params()
    with iam.client() as browser:
        page = iam.login_form(browser, params)
        response = iam.submit_login(browser, page, "alice", "not-her-password")
        assert response.status_code in (200, 401)
        assert "location" not in response.headers
        assert 'name="password"' in response.text
        assert "Invalid username or password" in response.text
        # The retry on the re-shown form succeeds.
        response = iam.submit_login(browser, response, "alice", "alice-demo")
        assert response.status_code == 302


def test_unknown_user_and_suspended_user_cannot_log_in(iam):
    params, _ = iam.authorize_params()
    with iam.client() as browser:
        page = iam.login_form(browser, params)
        response = iam.submit_login(browser, page, "nobody", "whatever")
        assert response.status_code == 401 and "Invalid username or password" in response.text
        response = iam.submit_login(browser, response, "frank", "frank-test")
        assert response.status_code == 401 and "location" not in response.headers
        assert "User frank is not active." in response.text


def test_login_form_without_csrf_token_is_refused(iam):
    params, _ = iam.authorize_params()
    with iam.client() as browser:
        iam.login_form(browser, params)
        response = browser.post("/authorize", params=params,
                                data={"username": "alice", "password": "alice-demo"})
        assert response.status_code == 400 and "location" not in response.headers


def test_logged_in_browser_gets_code_without_login_page(iam):
    login = iam.login("alice")
    params, verifier = iam.authorize_params()
    again = login.browser.get("/authorize", params=params)
    assert again.status_code == 302
    query = parse_qs(urlsplit(again.headers["location"]).query)
    assert query["state"] == [params["state"]] and query["code"]
    # prompt=login asks for the password again even with a session.
    params, _ = iam.authorize_params(prompt="login")
    assert login.browser.get("/authorize", params=params).status_code == 200
    # /logout ends the session.
    assert login.browser.get("/logout").status_code == 200
    params, _ = iam.authorize_params()
    assert login.browser.get("/authorize", params=params).status_code == 200


def test_prompt_none_without_session_redirects_login_required(iam):
    params, _ = iam.authorize_params(prompt="none")
    response = iam.get("/authorize", params=params)
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["error"] == ["login_required"] and query["state"] == [params["state"]]


def test_scope_not_registered_is_reported_to_the_client(iam):
    params, _ = iam.authorize_params(scope="openid storage.modify:/")
    response = iam.get("/authorize", params=params)
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(iam.HUB_CALLBACK)
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == ["invalid_scope"]
    assert query["error_description"] == ["Scope 'storage.modify:/' not allowed for client 'hub'"]


def test_no_refresh_token_without_offline_access(iam):
    body = iam.tokens("alice", scope="openid profile")
    assert "refresh_token" not in body
    assert body["id_token"]


def test_no_id_token_without_openid_scope(iam):
    body = iam.tokens("alice", scope="profile offline_access")
    assert "id_token" not in body and body["refresh_token"]


def test_audience_asked_at_authorize_is_in_access_token(iam):
    body = iam.tokens("alice", audience="https://storage.example.org")
    assert iam.verify(body["access_token"])["aud"] == "https://storage.example.org"


def test_public_client_must_use_pkce(iam):
    params, _ = iam.authorize_params(client_id="public", pkce=None,
                                     redirect_uri=iam.OTHER_CALLBACK, scope="openid")
    response = iam.get("/authorize", params=params)
    assert response.status_code == 302
    assert parse_qs(urlsplit(response.headers["location"]).query)["error"] == ["invalid_request"]

    login = iam.login("alice", client_id="public", redirect_uri=iam.OTHER_CALLBACK,
                      scope="openid profile")
    response = iam.exchange_code(login, client_id="public")
    assert response.status_code == 200, response.text
    assert iam.verify(response.json()["access_token"])["client_id"] == "public"


def test_bad_client_secret_at_code_exchange(iam):
    login = iam.login("alice")
    data = {"grant_type": "authorization_code", "code": login.code,
            "redirect_uri": login.redirect_uri, "code_verifier": login.verifier}
    status, error, _ = iam.error_of(iam.token_request("hub", data, secret="wrong"))
    assert (status, error) == (401, "invalid_client")
    # The failed attempt did not consume the code.
    assert iam.exchange_code(login).status_code == 200


def test_aarc_profile_carries_group_entitlements(start_standin):
    standin = start_standin(clients=[{
        "client_id": "aarc-client", "client_secret": "aarc-secret-Qp20",
        "redirect_uris": [standin_callback := "http://127.0.0.1:8000/hub/oauth_callback"],
        "scopes": ["openid", "profile", "offline_access", "eduperson_entitlement"],
        "token_profile": "aarc",
    }], organisation_name="iam.example")
    standin.CLIENTS = {**standin.CLIENTS, "aarc-client": {"client_secret": "aarc-secret-Qp20"}}
    login = standin.login("erin", client_id="aarc-client", redirect_uri=standin_callback,
                          scope="openid profile eduperson_entitlement")
    data = {"grant_type": "authorization_code", "code": login.code,
            "redirect_uri": standin_callback, "code_verifier": login.verifier}
    response = standin.post("/token", data=data, auth=("aarc-client", "aarc-secret-Qp20"))
    assert response.status_code == 200, response.text
    claims = standin.verify(response.json()["access_token"])
    assert claims["eduperson_entitlement"] == [
        "urn:geant:iam.example:group:officina",
        "urn:geant:iam.example:group:officina:gpu",
        "urn:geant:iam.example:group:officina:gpu:a100",
        "urn:geant:iam.example:group:visitors",
    ]
    assert "groups" not in claims
    info = standin.userinfo(response.json()["access_token"]).json()
    assert info["eduperson_entitlement"] == claims["eduperson_entitlement"]
    assert "groups" not in info
