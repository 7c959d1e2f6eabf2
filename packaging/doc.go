// Package packaging builds dmvpn's Debian package (make deb): dmvpnd and
// dmvpnctl, the systemd unit, an example configuration as a conffile,
// bash and zsh completions and manual pages generated from the commands'
// own definitions, with Depends taken from scripts/packages.list (the
// packages tagged node). It drives dpkg-deb; lintian checks the result in
// the tests, which also install it with dpkg -i and run the installed
// dmvpnd --check.
package packaging
