"""What every service shares: settings, authentication, codecs, metrics, logs, and the
faust app factory. Nothing here decides anything about money: that is domain/."""
