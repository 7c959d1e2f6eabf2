module github.com/opendmvpn/dmvpn

go 1.26
