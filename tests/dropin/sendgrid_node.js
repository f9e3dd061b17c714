// Sends one message through Sendmill's SendGrid v3 drop-in with SendGrid's official
// Node.js client (npm @sendgrid/mail with @sendgrid/client, pinned in
// deploy/local/install-packages.sh), changed only in its base URL and key.
// Argument: a JSON object with host, key, from and to. Prints status and X-Message-Id.
const client = require('@sendgrid/client');
const mail = require('@sendgrid/mail');

const cfg = JSON.parse(process.argv[2]);
client.setApiKey(cfg.key);
client.setDefaultRequest('baseUrl', cfg.host);
mail.setClient(client);

mail
  .send({
    to: cfg.to,
    from: { email: cfg.from, name: 'Node Drop-in' },
    subject: 'Sent with @sendgrid/mail',
    text: 'Hello from the Node.js client',
    html: '<p>Hello from the <i>Node.js</i> client</p>',
    categories: ['node'],
  })
  .then(([response]) => {
    console.log(JSON.stringify({ status: response.statusCode, message_id: response.headers['x-message-id'] }));
  })
  .catch((error) => {
    console.log(JSON.stringify({ status: error.code, body: error.response && error.response.body }));
  });
