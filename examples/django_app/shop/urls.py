from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("login", views.login, name="login"),
    path("logout", views.logout, name="logout"),
    path("connection-token", views.connection_token, name="connection-token"),
    path("orders", views.place_order, name="orders"),
    path("centrifuge.js", views.centrifuge_js, name="centrifuge-js"),
    path("centrifugo/subscribe", views.subscribe_proxy, name="subscribe-proxy"),
    path("centrifugo/rpc", views.rpc_proxy, name="rpc-proxy"),
]
